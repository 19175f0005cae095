"""One recipe per pipeline stage: a function taking the stage's inputs and ONE config dataclass, returning
ONE report dataclass (paths, counts, metrics, rows for the store).

The Dagster assets, the `dspark` command line and the benchmarks are thin callers of these functions, and
take their defaults and help texts from the config dataclasses (`dspark_core.settings`).

    prompts      prepare_prompts(config: PromptsConfig)                          -> PromptsReport
    responses    generate_responses(target, dataset, config: RegenerationConfig) -> ResponsesReport
    features     build_cache(target, dataset, config: CacheConfig)               -> FeatureCacheReport
    training     train(target, cache_path, config: TrainConfig)                  -> TrainReport
    export       export(checkpoint, config: ExportConfig)                        -> ExportReport
    evaluation   evaluate(target, draft, prompts, config: EvalConfig)            -> EvalReport
    champion     decide_champion(contender, champion, policy: ChampionPolicy)    -> ChampionDecision
"""
