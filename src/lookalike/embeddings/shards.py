"""Jobs shared by many workers, on FiftyOne's own delegated-operation queue.

Beyond one machine, FiftyOne already has the engine: any number of
``fiftyone delegated launch`` workers, on any machines that share the database,
claim queued operations atomically. So an embedding too big for one worker is
queued as N delegated runs of the plugin's ``compute_embeddings`` operator, one
per disjoint slice of the view (:func:`queue_embeddings`):

* the slices are ranges of sample ids, so each sample belongs to exactly one
  shard, whatever order workers take them in;
* the field's encoder record is written once, before anything is queued
  (:func:`lookalike.embeddings.compute.claim_field`); every shard checks it, and the
  shards share the field's lease because they embed with the same encoder;
* each shard resumes like any embedding: a rerun embeds only what is missing;
* queueing again keeps the shards still pending (same slice, same settings) and
  queues only the rest, so a queue killed halfway is finished, never doubled;
* a running shard holds a lease of its own (``shard:<field>:<k>/<n>``) renewed
  by its worker; :func:`list_jobs` reads it to tell a live worker from a dead one
  (``lookalike jobs``), and :func:`requeue` puts a dead worker's shard back in
  the queue (never a live one's), once: the old job's label names its copy.

The local features of geometric verification are queued the same way
(:func:`queue_features`): each shard fills the shared feature cache for its
slice, and a rerun computes only what is missing.

Training stays one job: one model, trained where the GPU is.
"""

import json
import logging
import re
from dataclasses import dataclass, field

from lookalike.core import faults, fo_adapter, leases
from lookalike.core.errors import UsageError

logger = logging.getLogger(__name__)

EMBED_OPERATOR = "@lookalike/similarity/compute_embeddings"
FEATURES_OPERATOR = "@lookalike/similarity/extract_features"
FEATURES = "features"  # the "field" part of a feature-extraction shard's name
PLUGIN = "@lookalike/similarity"
MAX_SHARDS = 1024
QUEUE_WAIT_S = 120.0  # how long a second queuer waits for the first


def shard_name(field, k, n):
    """The label of shard ``k`` of ``n`` of an embedding into ``field`` (its lease's name);
    ``field`` is :data:`FEATURES` for local features."""
    return f"shard:{field}:{k}/{n}"


def shard_views(samples, shards):
    """``shards`` disjoint views covering ``samples``: ranges of sample ids, about equal."""
    from bson import ObjectId
    from fiftyone import ViewField as F

    ids = sorted(samples.values("id"))
    if not ids:
        raise UsageError("the view is empty: there is nothing to embed")
    shards = max(1, min(int(shards), len(ids)))
    bounds = [ObjectId(ids[len(ids) * k // shards]) for k in range(shards)] + [None]
    views = []
    for lo, hi in zip(bounds, bounds[1:]):
        where = F("_id") >= lo
        if hi is not None:
            where = where & (F("_id") < hi)
        views.append(samples.match(where))
    return views


def queue_embeddings(samples, encoder, embeddings_field=None, shards=2, batch_size=64,
                     overwrite=False, chunk_size=None):
    """Queues the embedding of ``samples`` as ``shards`` delegated operations; returns their ids.

    Workers (``fiftyone delegated launch``, ``make worker``) on any machine that
    shares the database run them; each shard is a slice of ``samples`` by id.
    The encoder must be loadable by name there (the model store on shared
    storage: ``LOOKALIKE_MODELS_DIR``). ``chunk_size``: vectors per database
    write in each shard (default :func:`~lookalike.embeddings.compute.compute_embeddings`'s).
    Raises where the field cannot take this encoder's vectors, before anything
    is queued.
    """
    from lookalike.embeddings.compute import claim_field
    from lookalike.encoders import load_encoder

    shards = _check_shards(samples, shards, "embed")
    loaded = load_encoder(encoder) if isinstance(encoder, str) else encoder
    field = claim_field(samples, loaded, embeddings_field, overwrite=overwrite)
    return _queue(EMBED_OPERATOR, samples, shards, field, "lookalike embed", dict(
        encoder=loaded.name, embeddings_field=field, batch_size=int(batch_size),
        overwrite=bool(overwrite), **({"chunk_size": int(chunk_size)} if chunk_size else {})))


def queue_features(samples, shards=2, chunk_size=None):
    """Queues the local features of ``samples`` (for geometric verification) as ``shards`` jobs.

    Each shard fills the dataset's feature cache
    (:func:`lookalike.images.local_features.cache_features`) for its slice; the cache
    directory (``LOOKALIKE_DATA_DIR``) must be on storage every worker shares,
    like the media. ``chunk_size``: images between two progress reports.
    Returns the operations' ids.
    """
    shards = _check_shards(samples, shards, "extract features from")
    return _queue(FEATURES_OPERATOR, samples, shards, FEATURES, "lookalike",
                  {"chunk_size": int(chunk_size)} if chunk_size else {})


def _check_shards(samples, shards, verb):
    shards = int(shards)
    if not 1 <= shards <= MAX_SHARDS:
        raise UsageError(f"shards must be 1 to {MAX_SHARDS}, got {shards}")
    if fo_adapter.exact_count(samples) == 0:
        raise UsageError(f"the view is empty: there is nothing to {verb}")
    return shards


def _queue(operator, samples, shards, what, label, params):
    """One delegated run of ``operator`` per slice of ``samples``, each labelled with its shard.

    A shard already waiting in the queue, or running on a live worker, with the
    same slice and parameters (a rerun after a kill in the middle of queueing,
    or a second click, even at the same moment) is kept, not queued twice: its
    id is returned.
    """
    import fiftyone.operators as foo

    views = shard_views(samples, shards)
    service = fo_adapter.delegated_operations()
    dataset = fo_adapter.root_dataset(samples)
    ids = []
    faults.point("jobs.queue_lease")
    with _queue_lease(dataset, operator):
        pending = _pending(operator, dataset.name)
        for k, view in enumerate(views, 1):
            shard = shard_name(what, k, len(views))
            shard_params = {**params, "shard": shard}
            kept = pending.get(_job_key(shard_params, fo_adapter.serialized_view(view)))
            if kept:
                logger.info("%s is queued already (%s): kept", shard, kept)
                ids.append(kept)
                continue
            queued = foo.execute_operator(operator, ctx={"view": view}, request_delegation=True,
                                          params=shard_params)
            op_id = _op_id(queued.result["id"])
            service.set_label(op_id, f"{label} {shard[len('shard:'):]}")
            ids.append(str(op_id))
            faults.point("jobs.queued")
    return ids


def _queue_lease(dataset, operator):
    """One queuer (or requeuer) at a time per operator and dataset: a second waits, then
    keeps what the first queued (a queuer killed -9 is taken over at once)."""
    return leases.hold(dataset, f"queue:{operator}", job="queue shards", wait=QUEUE_WAIT_S,
                       label=f"the queue of {operator.split('/')[-1]} on '{dataset.name}'")


def _job_key(params, stages):
    # A view's stages carry a fresh _uuid each time they are serialised.
    stages = [{k: v for k, v in stage.items() if k != "_uuid"} for stage in stages or []]
    return json.dumps([params, stages], sort_keys=True, default=str)


def _pending(operator, dataset_name):
    """{job key: id} of ``operator``'s shards on ``dataset_name`` queued or running on a live worker."""
    pending = {}
    for job in list_jobs(dataset_name=dataset_name, states=("queued", "scheduled", "running")):
        if job.full_operator != operator or not job.shard or job.worker_gone:
            continue
        pending[_job_key(job.params, job.stages)] = job.id
    return pending


def _op_id(value):
    from bson import ObjectId

    return ObjectId(value["$oid"] if isinstance(value, dict) else value)


@dataclass
class Job:
    id: str
    operator: str
    dataset: str
    label: str
    state: str  # FiftyOne's: queued, scheduled, running, completed, failed
    worker: str  # for a running shard: "alive (host, pid)" or "gone (...)"; else ""
    progress: float = None
    queued_at: object = None
    shard: str = None
    full_operator: str = None
    params: dict = field(default_factory=dict, repr=False)
    stages: list = field(default_factory=list, repr=False)

    @property
    def worker_gone(self):
        return self.worker.startswith("gone")

    def line(self):
        """One line, for ``lookalike jobs``."""
        done = f" {self.progress:.0%}" if self.progress is not None else ""
        who = f" - worker {self.worker}" if self.worker else ""
        return f"{self.id}  {self.state}{done}  {self.dataset}  {self.label}{who}"


def _worker_state(op, shard):
    """A running shard's worker: alive while it renews its lease, gone once it stopped."""
    if op.run_state != "running" or not shard:
        return ""
    import fiftyone as fo

    name = fo_adapter.operation_request(op).get("dataset_name")
    if not name or not fo.dataset_exists(name):
        return "gone (its dataset was deleted)"
    held = leases.last(fo.load_dataset(name), shard)
    if held is None:
        return "gone (it holds no lease: killed before or after its work)"
    state = "alive" if leases.is_alive(held) else "gone"
    return f"{state} ({leases.describe(held)})"


def _as_job(op):
    """The :class:`Job` of one of our delegated operations; None for another plugin's."""
    if not str(op.operator).startswith(PLUGIN):
        return None
    request = fo_adapter.operation_request(op)
    params = request.get("params") or {}
    shard = params.get("shard")
    status = getattr(op, "status", None)
    return Job(id=str(op.id), operator=op.operator.split("/")[-1],
               dataset=request.get("dataset_name") or "", label=op.label or "",
               state=op.run_state, worker=_worker_state(op, shard),
               progress=getattr(status, "progress", None), queued_at=op.queued_at,
               shard=shard, full_operator=str(op.operator), params=params,
               stages=request.get("view") or [])


def list_jobs(dataset_name=None, states=None):
    """Our delegated operations (newest first), with their workers' state: :class:`Job` rows."""
    rows = []
    for op in fo_adapter.delegated_operations().list_operations(dataset_name=dataset_name):
        if not states or op.run_state in states:
            job = _as_job(op)
            if job is not None:
                rows.append(job)
    return sorted(rows, key=lambda j: str(j.queued_at), reverse=True)


# The label a requeued job is left with names its copy (the copy keeps the old label).
_REQUEUED_AS = re.compile(r"\(queued again as ([0-9a-f]{24})\)$")


def _job(op_id):
    try:
        op = fo_adapter.delegated_operations().get(_op_id(op_id))
    except Exception:  # noqa: BLE001 - not an ObjectId
        op = None
    if op is None:
        raise UsageError(f"no delegated operation {op_id}")
    job = _as_job(op)
    if job is None:
        raise UsageError(f"operation {op_id} is not a lookalike job")
    return job


def _check_requeue(job, op_id):
    if job.state == "running" and not job.worker_gone:
        raise UsageError(f"job {op_id} is running and its worker is alive ({job.worker}): "
                         "leave it, or stop that worker first")
    if job.state not in ("running", "failed"):
        raise UsageError(f"job {op_id} is {job.state}: only a failed job or one whose worker "
                         "died can be queued again")
    done = _REQUEUED_AS.search(job.label)
    if done:
        raise UsageError(f"job {op_id} was queued again already, as {done.group(1)}: "
                         "follow that one (`lookalike jobs`)")


def requeue(op_id):
    """Puts a job whose worker died (or that failed) back in the queue; returns the new id.

    The old operation is marked failed ("its worker died") so no worker waits on
    it; a job whose worker is alive, queued or completed is refused. Once only:
    the old job's label then names its copy, and a job already queued again (or
    a shard of the same slice and settings waiting in the queue) is refused.
    """
    import fiftyone as fo

    job = _job(op_id)
    _check_requeue(job, op_id)
    if not job.dataset or not fo.dataset_exists(job.dataset):
        raise UsageError(f"job {op_id}: its dataset '{job.dataset}' no longer exists")
    service = fo_adapter.delegated_operations()
    with _queue_lease(fo.load_dataset(job.dataset), job.full_operator):
        job = _job(op_id)  # as it is now that no other queuer runs
        _check_requeue(job, op_id)
        if job.shard:
            kept = _pending(job.full_operator, job.dataset).get(
                _job_key(job.params, job.stages))
            if kept:
                raise UsageError(f"job {op_id}: its shard {job.shard} is in the queue already, "
                                 f"as {kept}: follow that one (`lookalike jobs`)")
        old = _op_id(job.id)
        if job.state == "running":
            service.set_failed(old, result=fo_adapter.failed_result(
                f"its worker died ({job.worker}); queued again"))
        new = service.rerun_operation(old)
        service.set_label(old, f"{job.label} (queued again as {new.id})".strip())
    return str(new.id)
