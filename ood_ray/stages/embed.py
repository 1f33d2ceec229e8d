"""Stage ``embed``: the embedding operator of the scan pipeline, and the models' provenance.

The operator (:meth:`EmbedStage.operator`) is a Ray Data actor pool of
:class:`ood_ray.embed.actor.EmbedActor` appended to the scan's dataset, so decoded pixels stream
to the models without being written in between; its rows reach storage through the scan's sink
(``_emb_<model>`` in the staged ``images`` parts, classifier outputs as ``predictions``). Ray Data
restarts an actor whose process dies and retries its batches.

The stage's state is each model's provenance (alias, embedding size, classes, preprocessing,
checkpoint SHA-256): ``--reference`` refuses models whose weights differ from it.
"""

from __future__ import annotations

from typing import Any

from ood_ray.stages.base import Stage, StageResult


class EmbedStage(Stage):
    name = "embed"
    reads = ("embed",)
    report_key = None

    def enabled(self, ctx: Any) -> bool:
        return bool(ctx.infos)

    @staticmethod
    def operator(dataset: Any, ctx: Any) -> Any:
        """``dataset`` with the embedding actor pool appended."""
        import ray

        from ood_ray.embed.actor import EmbedActor, EmbedSettings

        embed = ctx.config.embed
        settings = EmbedSettings(top_k=embed.top_k, max_full_probabilities=embed.max_full_probabilities,
                                 num_cpus=embed.num_cpus_per_actor, num_gpus=embed.num_gpus_per_actor,
                                 precision=embed.precision)
        return dataset.map_batches(
            EmbedActor, batch_format="pyarrow", batch_size=embed.batch_size,
            fn_constructor_kwargs={"infos": ctx.infos, "settings": settings},
            compute=ray.data.ActorPoolStrategy(size=embed.num_actors),
            # A declared memory also keeps the decode tasks out of the actors: Ray Data fuses a
            # task operator into the next actor operator only when their resource requests match.
            num_cpus=embed.num_cpus_per_actor, num_gpus=embed.num_gpus_per_actor or None,
            memory=int(embed.actor_memory_mb * 2**20))

    def run(self, ctx: Any) -> StageResult:
        models = [{"alias": i.alias, "embedding_dim": i.embedding_dim, "num_classes": i.num_classes,
                   "preprocessing": i.data_config, **i.provenance} for i in ctx.infos]
        return StageResult(state={"models": models})
