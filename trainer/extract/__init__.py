"""Raw media to clip feature files (DESIGN.md section 7): ``python -m trainer extract``.

    python -m trainer extract --media media/crema --out data/crema

One module per concept: ``clips`` (finding clips in the data sets' layouts), ``decode`` (PyAV),
``audio`` (audio features), ``face`` (face features), ``openface`` (OpenFace CSV import),
``run`` (a whole folder: workers, resume, report) and ``cli`` (the verb). Importing the package
loads nothing heavy.
"""
