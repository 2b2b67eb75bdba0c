"""`python -m difftune.export` moved to `python -m difftune.hub.export`: say so in one line."""

if __name__ == "__main__":
    raise SystemExit("error: python -m difftune.export is now python -m difftune.hub.export")
