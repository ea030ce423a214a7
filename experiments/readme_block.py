"""Write an experiment's table into README.md between its `<!-- name:begin -->` / `<!-- name:end -->` markers."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def update_readme_block(name: str, text: str) -> None:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    content = README.read_text()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(content):
        raise SystemExit(f"README.md has no {begin} ... {end} block to fill")
    README.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", content))
