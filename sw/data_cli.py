"""``lowbit data fetch``: download a dataset from its public source into lowbit's data directory
(flags and work; the command is listed in :data:`lowbit.commands.COMMANDS`)."""

from __future__ import annotations

from pathlib import Path

from .data import DATA_ENV, SPLITS, default_data_dir
from .datasets import MULTI30K_URL, fetch_multi30k, parse_splits


def fetch_arguments(f) -> None:
    f.description = (f"Download Multi30k task 1 English-German from {MULTI30K_URL} and verify "
                     "each file's SHA-256. Files already there and verified are skipped.")
    f.add_argument("dataset", choices=["multi30k"], help="dataset name (multi30k)")
    f.add_argument("--dest", metavar="DIR",
                   help=f"destination folder (default: ${DATA_ENV} if set, else "
                        "$XDG_DATA_HOME/lowbit/multi30k or ~/.local/share/lowbit/multi30k, where "
                        "the other commands look without --data-dir)")
    f.add_argument("--splits", default="all",
                   help=f"comma-separated splits, or all (default): {', '.join(SPLITS)}")
    f.add_argument("--base-url", default=MULTI30K_URL, metavar="URL",
                   help="folder URL of a mirror holding the same files (http://, https:// or file://)")
    f.add_argument("--force", action="store_true",
                   help="download again files that are present with a wrong checksum")
    f.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="seconds to wait for a connection or for more data (60)")


def run_fetch(args):
    splits = parse_splits(args.splits)
    dest = default_data_dir() if args.dest is None else args.dest
    result = fetch_multi30k(dest, splits, args.base_url, force=args.force, timeout=args.timeout)
    n_new, n_old = len(result["downloaded"]), len(result["present"])
    print(f"Multi30k en-de in {dest}: {n_new + n_old} files verified ({n_new} downloaded, "
          f"{n_old} already present)")
    if Path(dest).expanduser().resolve() != default_data_dir().resolve():
        print(f"use it with --data-dir {dest} or {DATA_ENV}={dest}")
