"""Write the settings tables of docs/configuration.md and docs/training.md from the code.

    python tools/gen_settings_docs.py           # rewrite the tables
    python tools/gen_settings_docs.py --check   # exit 1 if a table is stale (a test runs this)

Each table sits between `<!-- settings:NAME -->` and `<!-- /settings -->`; everything else in
those pages is written by hand.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tables() -> dict[str, str]:
    from service.process.config import ENV_PREFIX, ServeConfig
    from service.settings import markdown_table
    from training.config import TrainConfig
    return {"serve": markdown_table(ServeConfig, ENV_PREFIX), "train": markdown_table(TrainConfig)}


PAGES = {"serve": ROOT / "docs" / "configuration.md", "train": ROOT / "docs" / "training.md"}


def main(argv: list[str]) -> int:
    stale = []
    for name, table in tables().items():
        page = PAGES[name]
        text = page.read_text()
        pattern = re.compile(rf"(<!-- settings:{name} -->\n).*?(<!-- /settings -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{page}: no <!-- settings:{name} --> ... <!-- /settings --> block")
        fresh = pattern.sub(lambda m: m[1] + table + m[2], text)
        if fresh != text:
            stale.append(str(page.relative_to(ROOT)))
            if "--check" not in argv:
                page.write_text(fresh)
    if stale and "--check" in argv:
        print(f"stale settings tables (run python tools/gen_settings_docs.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
