"""What several test modules share: composed configs, tiny models, images, faults, run outputs.

Importable as `helpers.<module>` (pytest puts tests/ on sys.path; a `train.py` subprocess gets
it on PYTHONPATH, so `+callbacks.x._target_=helpers.faults.KillAt` works there too).
"""
