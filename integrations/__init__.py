"""Client-side adapters: the scoring service as each RL trainer's reward, without changing the trainer.

=====================================  =========================================================
`integrations.trl_reward`              TRL ``GRPOTrainer(reward_funcs=...)``: sync and async functions
`integrations.verl_reward`             veRL ``custom_reward_function``: ``compute_score`` (+ ``_async``)
`integrations.openrlhf_reward`         OpenRLHF ``--reward.remote_url file.py``: ``reward_func``
`integrations.slime_reward`            slime ``--custom-rm-path``: ``reward``
`integrations.scorefile`               `rlhf score`: a JSONL file of pairs / dialogues -> scores
`integrations.convert`                 the one conversion of a trainer's prompt/completion to an item
`integrations.reward_options`          every adapter's uncertainty penalty and length-disentangled guard
`integrations.served_format`           pairs for a `pair` bundle, conversations for a `chat` bundle
`integrations.clients`                 service URLs from the environment; clients reused per process
=====================================  =========================================================

Each trainer can also call the service's HTTP routes directly (``/get_reward``, ``/classify``, the
slime route): docs/ lists the flags. The adapters add what plain HTTP lacks there: a bearer token,
retries with backoff across replicas, and chat-templated text converted to what the bundle expects.
torch-free: the adapters import `service.client` and the torch-free text helpers of `training`, never
torch, so they load in a trainer's process without pulling a second copy of anything heavy.
"""
