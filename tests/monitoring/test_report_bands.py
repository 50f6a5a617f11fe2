"""The monitoring page draws each window's 95% interval as a band around its line."""

import pandas as pd

from kfrelease.monitoring.report import figure


def history(intervals):
    return pd.DataFrame(
        {
            "version": ["V1.1.0", "V1.1.0"],
            "stage": ["production"] * 2,
            "start": ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"],
            "rmse": [2.0, 2.1],
            "mae": [1.5, 1.6],
            "r2": [0.5, 0.4],
            "drift_share": [0.1, 0.1],
            "intervals": intervals,
        }
    )


def test_windows_with_intervals_get_a_band_from_lower_to_upper():
    fig = figure(
        history(
            [
                {"rmse": [1.8, 2.2], "mae": [1.3, 1.7], "r2": [0.4, 0.6]},
                {"rmse": [1.9, 2.3], "mae": [1.4, 1.8], "r2": [0.3, 0.5]},
            ]
        ),
        "m",
    )
    bands = [t for t in fig.data if t.name.endswith("95% interval")]
    assert len(bands) == 3  # rmse, mae, r2 (drift share has no interval)
    rmse = bands[0]
    assert list(rmse.y) == [2.2, 2.3, 1.9, 1.8] and rmse.fill == "toself"


def test_windows_recorded_before_intervals_existed_draw_no_band():
    fig = figure(history([None, None]), "m")
    assert not [t for t in fig.data if t.name.endswith("95% interval")]


def test_each_window_kind_gets_its_own_chart_and_table_and_reports_are_links():
    from kfrelease.monitoring.passes import current_table
    from kfrelease.monitoring.report import render_page

    h = pd.concat(
        [
            history([None, None]).assign(window="3600s", labelled=300),
            history([None, None]).assign(window="200n", labelled=200),
        ],
        ignore_index=True,
    )
    page = render_page(h, current_table(h), "m", reports=[("V1.1.0-production", "reports/drift-r1-V1.1.0.html")])
    assert "Over time (3600s windows)" in page and "Over time (200n windows)" in page
    assert page.count('id="current"') == 2 and page.count("plotly.js v") == 1  # plotly inlined once
    assert '<a href="reports/drift-r1-V1.1.0.html">V1.1.0-production</a>' in page
