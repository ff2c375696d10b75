"""The API's response shapes, for the OpenAPI schema and for clients that generate code from it.

A classification record has exactly the keys of a line of ``multihead classify --json``
(:meth:`multihead.FileResult.to_dict`); ``tests/test_serve_api.py`` checks that the two stay the same.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["ClassifyResponse", "ErrorResponse", "ExplainRecord", "ExplainResponse", "GradCam", "Health",
           "PredictionRecord"]


class PredictionRecord(BaseModel):
    """One uploaded image's prediction: a line of ``multihead classify --json``, with ``source`` its file name."""

    source: str = Field(description="The uploaded file's name.")
    organ: str = Field(description="The router's organ.")
    organ_probability: float = Field(description="P(organ).")
    subtype: str = Field(description="The chosen organ head's subtype.")
    subtype_probability: float = Field(description="Joint P(organ) * P(subtype | organ).")
    organ_probabilities: dict[str, float] = Field(description="P(organ) for every organ of the taxonomy.")
    probabilities: dict[str, float] = Field(description="Joint probability of every subtype; they sum to 1.")
    untrained_organs: list[str] = Field(description="Organs the model never saw images of (probability 0).")
    covered_organs: list[str] = Field(description="Organs the model claims (trained on enough images); an answer "
                                                  "naming another organ is 'uncertain'.")
    status: Literal["organ_and_subtype", "organ_only", "uncertain"] = Field(
        description="How much to trust it: both answers, the organ only, or neither.")
    subtype_confidence: float | None = Field(description="P(subtype | organ), compared with the organ's subtype "
                                                         "threshold.")
    ood_score: float | None = Field(description="Cosine distance to the nearest training image; null when the model "
                                                "has no out-of-distribution score fitted.")
    out_of_distribution: bool = Field(description="The image looks like none of the training images.")
    error: str | None = Field(description="Always null here: a request with an unreadable image fails whole (422).")
    top_k: list[tuple[str, float]] | None = Field(
        default=None, description="The K most probable subtypes with joint probabilities; only with ?top_k=K > 1.")


class ClassifyResponse(BaseModel):
    results: list[PredictionRecord] = Field(description="One record per uploaded file, in upload order.")


class GradCam(BaseModel):
    """Grad-CAM on the shared trunk, as PNG data URLs (``data:image/png;base64,...``) at the model's input size."""

    layer: str = Field(description="The trunk stage the maps come from.")
    input: str = Field(description="The image as the model saw it (resized).")
    organ: str = Field(description="Evidence for the router's organ, over the image.")
    subtype: str = Field(description="Evidence for the head's subtype, over the image.")


class ExplainRecord(PredictionRecord):
    gradcam: GradCam


class ExplainResponse(BaseModel):
    results: list[ExplainRecord] = Field(description="One record per uploaded file, in upload order.")


class Health(BaseModel):
    status: Literal["ok"]
    model: dict[str, Any] = Field(description="Trunk name and input size of the model being served.")
    batching: dict[str, Any] = Field(description="The micro-batcher's settings and counters since start.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong with the request, naming the file where one is to blame.")
