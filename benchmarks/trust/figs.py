import json

import torch

torch.set_num_threads(1)
from multihead.evaluation.plots import pyplot
from multihead.evaluation.trust_plots import plot_ood_scores, plot_reliability_diagram, plot_risk_coverage

plt = pyplot()
r = json.load(open("/tmp/trust/measure-448.json"))
ax = plot_reliability_diagram(
    {
        f"before scaling (ECE {r['ece_before']:.3f})": r["reliability_before"],
        f"after scaling (ECE {r['ece_after']:.3f})": r["reliability_after"],
    },
    title="test split, MobileNetV2 448 px",
)
ax.figure.tight_layout()
ax.figure.savefig("docs/trust-reliability.png", dpi=100)
plt.close(ax.figure)
s = r["selective_test"]
ax = plot_risk_coverage(
    {"P(subtype | organ)": r["risk_coverage_subtype_conf"], "joint probability": r["risk_coverage_joint"]},
    target=0.99,
    points={
        f"thresholds from validation ({s['coverage']:.1%}, {s['accuracy_kept']:.2%})": (
            s["coverage"],
            s["accuracy_kept"],
        )
    },
    title="test split, MobileNetV2 448 px",
)
ax.set_ylim(0.9, 1.002)
ax.figure.tight_layout()
ax.figure.savefig("docs/trust-risk-coverage.png", dpi=100)
plt.close(ax.figure)
g = r["ood_group_scores"]
ax = plot_ood_scores(
    {
        "test split (in distribution)": r["ood_test_scores"],
        "photographs, documents, textures": g["photos"],
        "synthetic noise, blank, gradients": g["synthetic"],
        "other medical images": g["near"],
    },
    threshold=r["ood_stored"]["threshold"],
    title="OOD score, MobileNetV2 448 px",
)
ax.figure.tight_layout()
ax.figure.savefig("docs/trust-ood-scores.png", dpi=100)
plt.close(ax.figure)
