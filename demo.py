"""The guided-sampling web page: `python demo.py [key=value ...]` (conf/demo.yaml).

Installed with pip, the same command is `difftune-demo` (src/difftune/run/entry.py)."""

from difftune.run.entry import demo_command

if __name__ == "__main__":
    demo_command()
