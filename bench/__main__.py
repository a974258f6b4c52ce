"""`make bench`: run every benchmark in turn."""

from __future__ import annotations

from bench import throughput


def main() -> None:
    throughput.main()


if __name__ == "__main__":
    main()
