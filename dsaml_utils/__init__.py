"""dsaml_utils: the library behind the DSAML workbook.

One module per pipeline stage:
audio -> features -> data (deam, pmemo, synth) -> encoders/imagebind -> model/baselines
-> meta -> train -> metrics/evaluate -> plots -> workbook.
"""

__version__ = "0.1.0"
