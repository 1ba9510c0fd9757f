"""A recurring schedule declared in code, beside the job type it runs."""

from examples.text_stats import text_stats  # noqa: F401  (the type the schedule runs)
from shared.registry import schedule

schedule(
    "nightly-word-count",
    "30 2 * * *",  # 02:30 every day, Berlin time
    "text_stats",
    {"text": "to be or not to be", "top": 2},
    timezone="Europe/Berlin",
    overlap="skip",  # never two at once: a run is skipped while the last one still runs
    misfire="run_once",  # after an outage: one run for everything that was missed
)
