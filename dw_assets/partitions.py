"""The weekly partitions every weekly asset shares, and the history window."""

from __future__ import annotations

import warnings

from dagster import BackfillPolicy, BetaWarning, TimeWindowPartitionMapping, WeeklyPartitionsDefinition

from dw_assets import settings
from dw_assets.calendar import HISTORY_WEEKS, shift_week

# Partition keys are the Monday that starts a listening week (00:00 UTC). The first week is a
# deployment setting (DW_FIRST_WEEK; the simulator's worlds start at its default), read when the code
# location loads: the partitions definition below is built then.
FIRST_WEEK = settings.get("DW_FIRST_WEEK")

weekly_partitions = WeeklyPartitionsDefinition(start_date=FIRST_WEEK, day_offset=1, timezone="UTC")

# Week W reads weeks W-11..W; at the start of history the window just holds fewer weeks.
def lenient_window(start_offset: int, end_offset: int) -> TimeWindowPartitionMapping:
    """Weeks ``start_offset..end_offset`` around a week, holding only those that exist (fewer at
    the start of history). The option is beta in Dagster 1.13: its warning would open every
    ``dw`` command's output, so it is silenced here, where the option is chosen on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)
        return TimeWindowPartitionMapping(start_offset=start_offset, end_offset=end_offset,
                                          allow_nonexistent_upstream_partitions=True)


history_window = lenient_window(-(HISTORY_WEEKS - 1), 0)

# The week before: the ranker of week W learns from W-1's candidates, labelled by W's listening.
previous_week = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)

# The week before, when it exists (a self-dependency: the audio step keeps the week before's encoder).
week_before = lenient_window(-1, -1)

# Earlier weeks only (a self-dependency): last weeks' playlists feed this week's exploration.
earlier_weeks = lenient_window(-HISTORY_WEEKS, -1)

# Backfills run one week per run. Not single_run: the assets read `context.partition_key` (one
# week) and write one week per output. And a week needs the week before it (ranker_model reads
# week W-1's candidates, ranked_playlists earlier weeks' playlists), so a failed week is retried
# alone before the next. Every weekly asset has this policy: Dagster never runs assets with
# different policies together.
ONE_WEEK_PER_RUN = BackfillPolicy.multi_run(max_partitions_per_run=1)


def history_window_weeks(week: str) -> list[str]:
    """The weeks of ``week``'s 12-week window that exist as partitions (none before FIRST_WEEK)."""
    return [k for k in weekly_partitions.get_partition_keys() if shift_week(week, -(HISTORY_WEEKS - 1)) <= k <= week]
