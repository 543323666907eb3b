"""Artifact storage, the leaf every other part may use: files written whole (``files``), paths
that are a folder or an ``s3://`` prefix (``uri``), the one ``s3://`` URI parser (``s3uri``),
the run directory (``rundir``), the S3 client and syncs (``s3``) and the run directory's S3
mirror (``mirror``). boto3 loads only where S3 is used."""
