"""The extract-features operator: local features for geometric verification, ahead of time.

Find duplicates and find leaks compute them on first use; on a large dataset
this runs them beforehand, in ``shards`` jobs for any number of workers
(:func:`lookalike.embeddings.shards.queue_features`), each filling the shared cache
(:func:`lookalike.images.local_features.cache_features`).
"""

from fiftyone.operators.types import RiskLevel

from . import forms


class ExtractFeatures(forms.BackgroundOperator):
    options = dict(name="extract_features", label="Lookalike: extract local features",
                   description="Compute the local features (SIFT) that geometric verification "
                   "uses, ahead of time and in shards for several workers", dynamic=True,
                   risk_level=RiskLevel.LOW)
    title = "Extract local features"
    outputs = (("int", "images", "Images"), ("int", "without", "Without features"),
               ("table", "failures", "Images without features",
                forms.file_columns("Image without features")))

    def form(self, inputs, ctx):
        forms.shards_input(inputs)
        forms.execution_notice(inputs, self, ctx)
        inputs.view_target(ctx)

    def execute(self, ctx):
        from lookalike.core.errors import UsageError
        from lookalike.embeddings.shards import queue_features
        from lookalike.images.local_features import cache_features

        shards = int(ctx.params.get("shards") or 1)
        if shards > 1:  # fan out: one queued job per slice
            if not forms.background_jobs_enabled():
                raise UsageError(f"shards need workers. {forms.NO_WORKER}")
            ids = queue_features(ctx.target_view(), shards)
            ctx.ops.notify(f"{len(ids)} feature jobs in the queue (shards queued already are "
                           "kept): workers run them (lookalike jobs lists them)",
                           variant="success")
            return {"images": 0, "without": 0, "failures": [], "queued": ids}
        with forms.shard_lease(ctx, "extract_features"):
            report = cache_features(ctx.target_view(), progress=forms.progress(ctx),
                                    chunk=int(ctx.params.get("chunk_size") or 64))
        without = report["without"]
        ctx.ops.notify(f"Local features of {report['images']} images cached"
                       + (f"; {len(without)} without features" if without else ""),
                       variant="success")
        return {"images": report["images"], "cached_before": report["cached_before"],
                "without": len(without),
                "failures": [{"path": path, "reason": why} for path, why in without.items()]}
