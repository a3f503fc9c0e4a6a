"""The loaded model."""

from __future__ import annotations

from fastapi import APIRouter

from ..dependencies import PROTECTED, State
from ..schemas import ModelInfo, ModelList, problem_responses

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, dependencies=PROTECTED, responses=problem_responses(401))
async def models(state: State) -> ModelList:
    """The loaded model."""
    backend = state.backend
    return ModelList(models=[ModelInfo(name=backend.name, summary=backend.summary, loaded=True, prompts=True,
                                       everything=backend.supports_everything,
                                       low_res_size=list(backend.low_res_size))])
