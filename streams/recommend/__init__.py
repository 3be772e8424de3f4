"""Live recommendations from the clickstream: pure logic, no Faust imports (docs/recommendations.md).

- `state`: per-user session and purchase history (user-keyed table values);
- `cooccurrence`: online item-item counts, pruned per item (item-keyed rows, global pruned lists);
- `popularity`: item statistics and the most-popular boards;
- `content`: product-embedding similarity (cold start);
- `ranker`: candidates, features and the weighted blend;
- `engine`: the user step and the item updates it sends; `service`: the three entry points the agents
  call (the item step among them); `wiring`: the one wiring of them over the tables.

Its evaluation (offline and through the running service) is tooling: `tooling.recommend_eval`, where
`local.LocalRecommender` drives the one wiring in a single process.
"""

from streams.recommend.config import SOURCES, RecommenderConfig, Weights
from streams.recommend.content import ContentIndex
from streams.recommend.engine import Click, ItemUpdate, user_step
from streams.recommend.ranker import GlobalView, ScoredProduct, recommend
from streams.recommend.state import UserState

__all__ = [
    "SOURCES",
    "Click",
    "ContentIndex",
    "GlobalView",
    "ItemUpdate",
    "RecommenderConfig",
    "ScoredProduct",
    "UserState",
    "Weights",
    "recommend",
    "user_step",
]
