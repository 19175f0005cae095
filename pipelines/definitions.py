"""The one Definitions object of the platform; `dagster dev -w workspace.yaml` loads it."""

import dagster as dg

from assets.base_model import base_model

defs = dg.Definitions(assets=[base_model])
