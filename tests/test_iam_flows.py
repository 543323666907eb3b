"""The S3 policies of the stack's roles against the exact requests each flow makes: a small
policy simulator (IAM's matching of actions, resources and conditions, with S3's rule for keys
that do not exist) evaluates the statements infra/iam.py produces under Pulumi's mocks. moto
enforces no IAM, so this is where a missing or widened grant shows.

    .venv/bin/python -m pytest tests/test_iam_flows.py -q

S3's rule (its documentation of GetObject and HeadObject): a request for a key that does not
exist is answered 404 only if the caller may also ``s3:ListBucket`` the bucket, a check made
without any request prefix; otherwise 403. A flow that asks whether a file is there yet (a new
fold's ``summary.json``, a checkpoint, the extraction's ``extract.json``) needs that 404.
"""

from __future__ import annotations

import fnmatch

import pytest

from test_infra import deploy, stack  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws")

ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
JOB_POLICY, INSTANCE_POLICY = "ave-batch-job-policy", "ave-instance-policy"


def as_list(x) -> list:
    return x if isinstance(x, list) else [x]


def _match(pattern: str, value: str, ignore_case: bool) -> bool:
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    # IAM's wildcards are * and ?; fnmatch's [..] sets never appear in these policies
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _condition_holds(condition: dict, context: dict) -> bool:
    """Every operator and key must hold; a key absent from the request fails StringLike and
    StringEquals (IAM's rule without ...IfExists); Null tests absence."""
    for op, tests in condition.items():
        for key, wanted in tests.items():
            got = context.get(key)
            if op == "Null":
                if (got is None) != (str(wanted).lower() == "true"):
                    return False
            elif op in ("StringLike", "StringEquals"):
                if got is None or not any(
                        (_match(w, got, False) if op == "StringLike" else w == got)
                        for w in as_list(wanted)):
                    return False
            else:
                raise AssertionError(f"the simulator does not know condition {op}")
    return True


def decide(policy: dict, action: str, resource: str, context: dict | None = None) -> bool:
    """IAM's evaluation of one identity policy: an explicit Deny wins, then any Allow, else the
    implicit deny."""
    context = context or {}

    def applies(st):
        return (any(_match(a, action, True) for a in as_list(st["Action"]))
                and any(_match(r, resource, False) for r in as_list(st["Resource"]))
                and _condition_holds(st.get("Condition", {}), context))

    hits = [st["Effect"] for st in policy["Statement"] if applies(st)]
    return "Deny" not in hits and "Allow" in hits


class S3:
    """A bucket whose requests are answered as S3 answers them under ``policy``."""

    def __init__(self, policy: dict, bucket_arn: str, existing: set[str]):
        self.policy, self.arn, self.existing = policy, bucket_arn, existing

    def get(self, key: str) -> int:  # GetObject and HeadObject
        if not decide(self.policy, "s3:GetObject", f"{self.arn}/{key}"):
            return 403
        if key in self.existing:
            return 200
        return 404 if decide(self.policy, "s3:ListBucket", self.arn) else 403

    def put(self, key: str) -> int:  # PutObject, conditional or not; multipart parts too
        if not decide(self.policy, "s3:PutObject", f"{self.arn}/{key}"):
            return 403
        self.existing.add(key)
        return 200

    def abort_multipart(self, key: str) -> int:
        return 204 if decide(self.policy, "s3:AbortMultipartUpload", f"{self.arn}/{key}") else 403

    def list(self, prefix: str) -> int:
        return 200 if decide(self.policy, "s3:ListBucket", self.arn, {"s3:prefix": prefix}) else 403

    def delete(self, key: str) -> int:
        return 204 if decide(self.policy, "s3:DeleteObject", f"{self.arn}/{key}") else 403


def fold_requests(s3: S3, data: str, run: str) -> list[tuple[str, str, int, int]]:
    """(what, key, status, status wanted) of one Batch child, ``cv --task auto`` on the data set
    prefix ``data`` writing ``run``fold-1/: as trainer/cv/run.py, lock.py, store/s3.py and
    store/mirror.py make them."""
    fold = f"{run}fold-1/"
    return [
        ("list the data set", data, s3.list(data), 200),
        ("read a clip", f"{data}1001_DFA_ANG_XX.npz", s3.get(f"{data}1001_DFA_ANG_XX.npz"), 200),
        ("is the fold done (head)", f"{fold}summary.json", s3.get(f"{fold}summary.json"), 404),
        ("has it a checkpoint (head)", f"{fold}checkpoints/last.pt",
         s3.get(f"{fold}checkpoints/last.pt"), 404),
        ("has it a record (head)", f"{fold}cv-task.json", s3.get(f"{fold}cv-task.json"), 404),
        ("take the lease (PUT If-None-Match)", f"{fold}.writer-lease.json",
         s3.put(f"{fold}.writer-lease.json"), 200),
        ("read the lease", f"{fold}.writer-lease.json", s3.get(f"{fold}.writer-lease.json"), 200),
        ("write its record", f"{fold}cv-task.json", s3.put(f"{fold}cv-task.json"), 200),
        ("fetch train.log (none yet)", f"{fold}train.log", s3.get(f"{fold}train.log"), 404),
        ("write the heartbeat", f"{fold}status.json", s3.put(f"{fold}status.json"), 200),
        ("upload a checkpoint (multipart)", f"{fold}checkpoints/last.pt",
         s3.put(f"{fold}checkpoints/last.pt"), 200),
        ("abort a failed multipart upload", f"{fold}checkpoints/best.pt",
         s3.abort_multipart(f"{fold}checkpoints/best.pt"), 204),
        ("a retry reads the checkpoint", f"{fold}checkpoints/last.pt",
         s3.get(f"{fold}checkpoints/last.pt"), 200),
        ("list the run (aggregate)", run, s3.list(run), 200),
    ]


@pytest.mark.parametrize("data", ["data/crema-3f2a/", "features/crema-1a2b-0c3d/"])
def test_a_batch_fold_gets_every_answer_it_needs_on_data_or_features(stack, data):
    bucket = stack.one("aws:s3/bucket:Bucket").state["arn"]
    s3 = S3(stack.policy(ROLE_POLICY, JOB_POLICY), bucket, {f"{data}1001_DFA_ANG_XX.npz"})
    wrong = [(what, key, got, want) for what, key, got, want in
             fold_requests(s3, data, "runs/20261206-r1/") if got != want]
    assert wrong == []


def test_a_batch_fold_cannot_write_outside_runs_read_media_or_delete(stack):
    bucket = stack.one("aws:s3/bucket:Bucket").state["arn"]
    s3 = S3(stack.policy(ROLE_POLICY, JOB_POLICY), bucket,
            {"media/crema-1a2b/VideoFlash/1001_DFA_ANG_XX.flv", "data/d/a.npz", "runs/r/x.json"})
    assert s3.put("data/d/a.npz") == 403
    assert s3.put("features/crema-1a2b-0c3d/a.npz") == 403  # an array never extracts
    assert s3.put("runsx/a") == 403
    assert s3.get("media/crema-1a2b/VideoFlash/1001_DFA_ANG_XX.flv") == 403
    assert s3.get("ops/bootstrap.sh") == 403
    assert s3.delete("runs/r/x.json") == 403 and s3.delete("data/d/a.npz") == 403
    other = S3(s3.policy, "arn:aws:s3:::another-bucket", {"data/x"})
    assert other.get("data/x") == 403 and other.list("data/") == 403


def test_the_instance_extracts_media_into_features_then_trains(stack):
    bucket = stack.one("aws:s3/bucket:Bucket").state["arn"]
    media, feats, run = "media/crema-1a2b/", "features/crema-1a2b-0c3d/", "runs/r2/"
    s3 = S3(stack.policy(ROLE_POLICY, INSTANCE_POLICY), bucket,
            {f"{media}VideoFlash/1001_DFA_ANG_XX.flv"})
    got = [
        ("is there an extraction (head)", s3.get(f"{feats}extract.json"), 404),
        ("list the media", s3.list(media), 200),
        ("read a media file", s3.get(f"{media}VideoFlash/1001_DFA_ANG_XX.flv"), 200),
        ("list the features (resume)", s3.list(feats), 200),
        ("upload a clip file", s3.put(f"{feats}1001_DFA_ANG_XX.npz"), 200),
        ("upload extract.json last", s3.put(f"{feats}extract.json"), 200),
        ("read the features back", s3.get(f"{feats}1001_DFA_ANG_XX.npz"), 200),
        ("fetch train.log (none yet)", s3.get(f"{run}train.log"), 404),
        ("write the run", s3.put(f"{run}checkpoints/last.pt"), 200),
        ("write the media", s3.put(f"{media}x.flv"), 403),
        ("write the data sets", s3.put("data/d/a.npz"), 403),
        ("delete a run file", s3.delete(f"{run}checkpoints/last.pt"), 403),
    ]
    assert [(what, g) for what, g, want in got if g != want] == []


def test_the_simulator_sees_what_the_old_job_policy_got_wrong(stack):
    """The job policy as it was: listing only under data/ and runs/, reading only there. A new
    fold's first question (is summary.json there?) got 403, and features/ could not be read."""
    bucket = stack.one("aws:s3/bucket:Bucket").state["arn"]
    old = {"Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": ["data/*", "runs/*"]}}},
        {"Effect": "Allow", "Action": "s3:GetObject",
         "Resource": [f"{bucket}/data/*", f"{bucket}/runs/*"]},
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{bucket}/runs/*"}]}
    data = "features/crema-1a2b-0c3d/"
    s3 = S3(old, bucket, {f"{data}1001_DFA_ANG_XX.npz"})
    wrong = {what: got for what, _, got, want in fold_requests(s3, data, "runs/r1/")
             if got != want}
    assert wrong["is the fold done (head)"] == 403
    assert wrong["read a clip"] == 403 and wrong["list the data set"] == 403
    # and an explicit Deny wins over any Allow
    denied = {"Statement": [*old["Statement"], {"Effect": "Deny", "Action": "s3:*",
                                                "Resource": f"{bucket}/runs/*"}]}
    assert not decide(denied, "s3:PutObject", f"{bucket}/runs/r1/x")
