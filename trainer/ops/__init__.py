"""The operator side: deploy, status, logs, monitor, results, destroy (DESIGN.md section 5).

    make deploy DATA=demo-data ARGS='--epochs 30'     # python -m trainer deploy --data D --args=A
    make status                                       # state, epoch, best, ETA, instance, cost
    make logs FOLLOW=1                                # the run's log, live
    make monitor                                      # a menu over all of the above
    make results RUN=20250101-120000-ab12             # results/RUN_ID/summary.md and plots
    make destroy                                      # pulumi destroy, after a confirmation
    make deploy BACKEND=local                         # the same on the local Docker engine + moto

Only these verbs import this package (trainer/cli.py registers them through ``trainer.ops.cli``,
which imports nothing but argparse); the trainer in the container never does. Modules:

- ``cli``: the verbs' flags; ``verbs``: the verbs, thin; ``settings``: deploy.yaml; ``flow``:
  the deploy and destroy steps;
  ``upload``: DATA and MEDIA checked and uploaded to content-addressed prefixes.
- ``aws``: every boto3 client (tests point AWS_ENDPOINT_URL at a moto server); ``stack``: the
  Pulumi Automation API; ``image``: Docker SDK build and ECR push; ``runs``: run directories in S3.
- ``cloud`` and ``local``: the two backends (EC2 + SSM + CloudWatch, or Docker + moto).
- ``batch``: AWS Batch calls (revision, array job, children, terminate); ``arrays``: a
  cross-validation run as one array (``make deploy FOLDS=5``: inputs, folds, stopping it).
- ``pricing``: hourly price; ``views``: text for the terminal; ``monitor``: the menu;
  ``board``: TensorBoard over run folders on loopback (``make tensorboard``, the menu's ``t``);
  ``report``: results/RUN_ID/summary.md; ``projection``: the cost and time of a cross-validation
  on Batch, projected from bench.json.
"""


class OpsError(Exception):
    """A problem the operator can act on; ``str()`` says what failed and what to do, in one line."""
