"""The offline demo (``fgsearch demo``): FineShapes photos generated, indexed with the shipped demo
model, the example queries run and drawn (a table per query, a contact sheet and an HTML page)."""

from __future__ import annotations

from pathlib import Path


def run_demo(folder: Path, n: int) -> None:
    """Generate ``n`` FineShapes photos under ``folder``, index them and print and draw the example queries."""
    from fgsearch.library import Library
    from fgsearch.render import RenderItem, contact_sheet, html_page
    from fgsearch.terminal import console, hits_table
    from fgsearch.trainer.fineshapes import EXAMPLE_QUERIES, make_fineshapes

    data = make_fineshapes(folder / "photos", n=n, seed=1234, heldout=0, overwrite=True)  # its own photos
    out = console()
    with Library.open(folder / "library", model="demo", device="cpu") as lib:
        rep = lib.index(str(data / "images"))
        out.print(f"indexed {rep.indexed} photos ({rep.regions} regions) in {rep.seconds:.1f}s", highlight=False)
        for i, q in enumerate(EXAMPLE_QUERIES):
            hits = lib.search(q, k=4)
            out.print(hits_table(hits, f"query: {q}", folder.resolve()))
            items = [RenderItem(h.path, f"#{h.rank} · score {h.score:.3f}", h.box) for h in hits]
            contact_sheet(items, folder / f"query{i + 1}.png", thumb=160, title=q)
            html_page(items, folder / f"query{i + 1}.html", title=q)
    out.print(f"pictures with the boxes drawn: {folder}/query1.png ... query{len(EXAMPLE_QUERIES)}.png (and .html)")
