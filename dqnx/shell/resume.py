"""Resuming a run: metric files cut back to the checkpoint restored."""

from __future__ import annotations


def truncate_metrics(workdir, env_steps: int) -> None:
    """Drops metric lines/rows past ``env_steps`` (resuming re-creates them)."""
    import csv
    import json

    path = workdir / "metrics.jsonl"
    if path.exists():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["env_steps"] <= env_steps:
                    keep.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a crash ends the readable part
        path.write_text("".join(keep))
    path = workdir / "metrics.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if rows:
            col = rows[0].index("env_steps") if "env_steps" in rows[0] else 0
            body = []
            for r in rows[1:]:
                try:
                    if len(r) == len(rows[0]) and int(r[col]) <= env_steps:
                        body.append(r)
                except ValueError:
                    pass
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([rows[0], *body])
