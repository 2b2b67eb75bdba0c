"""Sample a DDPM pipeline, optionally guided: `python sample.py [key=value ...]` (conf/sample.yaml).

Installed with pip, the same command is `difftune-sample` (src/difftune/run/entry.py)."""

from difftune.run.entry import sample_command

if __name__ == "__main__":
    sample_command()
