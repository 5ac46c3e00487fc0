"""The PostgreSQL fixture gives each test its own database with pgvector available."""

from __future__ import annotations

import sqlalchemy as sa


def test_postgres_url_is_a_fresh_database_with_pgvector(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            tables = conn.execute(sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar()
            version = conn.execute(sa.text("SHOW server_version_num")).scalar()
            got = conn.execute(sa.text("SELECT '[1,2]'::vector <#> '[3,4]'::vector")).scalar()
    finally:
        engine.dispose()
    assert tables == 0
    assert int(str(version)) >= 180000
    assert got == -11.0  # pgvector's negative inner product
