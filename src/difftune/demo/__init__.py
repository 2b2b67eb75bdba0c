"""The guided-sampling web page (`python demo.py`): Gradio controls over `sample.py`'s job."""
