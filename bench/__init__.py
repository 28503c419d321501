"""Side-by-side measurements (`rlhf bench ...`) and the naive peer they compare against.

Never imported by the runtime: `service/` must run without it, and a test enforces that.
Each benchmark prints ratios measured in one run; the README's tables quote them with their command.
"""
