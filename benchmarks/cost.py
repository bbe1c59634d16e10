"""Figure 7: one global annual layer (1.4e12 land pixels of 10 m) at a measured encoder rate.

km^2 per hour = px/s x 3600 x 1e-4 (a 10 m pixel is 1e-4 km^2). The encoder rate is the only
stage counted: loading runs beside it on the CPU (figure 4). The test bed holds 40 frames a year;
a real year holds 70-150 per pixel, and the encoder's cost grows about linearly with frames.
"""

from __future__ import annotations

from benchmarks.report import Figure

LAND_PIXELS = 1.4e12
KM2_PER_PIXEL = 1e-4
TESSERA_KM2_PER_GPU_HOUR = 4_700.0  # dClimate's TESSERA run on an L40S, per-pixel model


def cost_figure(encoder: Figure) -> Figure:
    details = encoder.details
    if encoder.value is None:
        return Figure(7, f"global layer, {details.get('spec', '?')}", None, "km^2/h", note=encoder.note)
    per_hour = encoder.value * 3600 * KM2_PER_PIXEL
    hours = LAND_PIXELS / encoder.value / 3600
    unit = "GPU" if str(details["device"]).startswith("cuda") else "machine"
    return Figure(
        7,
        f"global layer, {details['spec']} on {details['device']}: km^2 per {unit}-hour",
        per_hour,
        "km^2/h",
        sizes=f"{details['frames']} frames per year",
        note=f"{hours:,.0f} {unit}-hours for 1.4e12 px; TESSERA {TESSERA_KM2_PER_GPU_HOUR:,.0f} km^2/GPU-h "
        f"-> ratio {per_hour / TESSERA_KM2_PER_GPU_HOUR:.3g}",
        details={"hours": hours, "km2_per_hour": per_hour, "tessera_ratio": per_hour / TESSERA_KM2_PER_GPU_HOUR},
    )
