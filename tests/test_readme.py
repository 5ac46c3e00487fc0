"""The README's Python example runs (with a tiny model and generated photos in place of the real ones)."""

from __future__ import annotations

import re
from pathlib import Path

from _library_data import make_folder

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_library_example_runs(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    text = README.read_text()
    block = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S)
    assert block, "README has no '## As a library' python example"
    code = block.group(1).replace('model="fg-clip-base"', f'model="{tiny_model_dir}"')
    make_folder(tmp_path / "photos", n_good=4, bad=False)
    from PIL import Image

    Image.open(next((tmp_path / "photos").glob("*.jpg"))).save(tmp_path / "query.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "lib" / "catalog.sqlite").exists()
