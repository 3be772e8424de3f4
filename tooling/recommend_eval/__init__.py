"""The recommender's evaluation on the Instacart sample.

- `protocol`: the data, the hold-out split, the prediction points, the baselines and the scores that
  both evaluators share.
- `local`: `LocalRecommender`, the service's recommender (its one wiring) over dicts in this process.
- `offline`: `python -m tooling.recommend_eval.offline`, the recommender replayed in process.
- `through_service`: `python -m tooling.recommend_eval.through_service`, the same protocol through a
  running worker on the embedded broker and Triton.
"""
