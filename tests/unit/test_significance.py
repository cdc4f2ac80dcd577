"""The verdict's rule on hand cases: Welch's t-test, Holm's correction, tie and the seeds to add."""

import pytest

from ranktune.platform.report.significance import ADD_SEEDS, RESOLVED, TIE, TOO_FEW, compare, holm, welch

# The README demo's replicates (issue 23): APOLLO wins on the mean, GaLore is the runner-up.
APOLLO = [6.3286, 6.3439, 6.3746]
GALORE = [6.4407, 6.3580, 6.4137]


def test_demo_numbers_are_not_resolved_and_need_about_six_seeds_per_arm():
    gap, se, df, t, p, low, high = welch(APOLLO, GALORE)
    # Reference values: scipy.stats.ttest_ind(GALORE, APOLLO, equal_var=False) and its confidence_interval()
    assert gap == pytest.approx(0.0551, abs=1e-9)
    assert t == pytest.approx(1.9783, abs=1e-4) and df == pytest.approx(3.1269, abs=1e-4)
    assert p == pytest.approx(0.1386, abs=1e-4)
    assert (low, high) == (pytest.approx(-0.0315, abs=1e-4), pytest.approx(0.1417, abs=1e-4))
    (c,) = compare(("apollo", APOLLO), [("galore", GALORE)], tie_threshold=0.01)
    assert c.verdict == ADD_SEEDS
    # 2 * (2.8 * sigma / gap)^2 = 6.01 per arm, rounded up
    assert c.seeds_per_arm == 7
    assert "about 7 seeds per arm" in c.why() and "t 1.98" in c.why() and "p 0.14" in c.why()


def test_t_distribution_against_table_values():
    from scipy import stats

    # Two-sided 95% critical values of Student's t (any statistics table): df 2 -> 4.303, df 10 -> 2.228.
    assert float(stats.t.ppf(0.975, 2)) == pytest.approx(4.303, abs=1e-3)
    assert float(stats.t.ppf(0.975, 10)) == pytest.approx(2.228, abs=1e-3)
    # Equal n and variance: Welch's df is 2(n - 1) = 4, se = sqrt(1/3 + 1/3), t = 3 / se = 3.674;
    # P(|T_4| > 3.674) = 0.0213 (table: t_0.99,4 = 3.747, t_0.975,4 = 2.776)
    gap, se, df, t, p, low, high = welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert (gap, se, df) == (pytest.approx(3.0), pytest.approx((2 / 3) ** 0.5), pytest.approx(4.0))
    assert t == pytest.approx(3.6742, abs=1e-4) and p == pytest.approx(0.0213, abs=1e-4)
    assert high - gap == pytest.approx(2.776 * (2 / 3) ** 0.5, abs=1e-3)


def test_clear_gap_is_resolved_small_gap_is_a_tie():
    clear = compare(("a", [3.00, 3.01, 3.02]), [("b", [3.20, 3.21, 3.22])], tie_threshold=0.01)[0]
    assert clear.verdict == RESOLVED and clear.seeds_per_arm is None and clear.p < 1e-4
    # Means 0.001 apart, spread 0.0005: the interval sits inside +/- 0.01
    tie = compare(("a", [3.0000, 3.0005, 3.0010]), [("b", [3.0010, 3.0015, 3.0020])], tie_threshold=0.01)[0]
    assert tie.verdict == TIE and tie.high < 0.01 and tie.low > -0.01
    # The same gap with a wide spread: neither; the seeds needed are those that would show the tie
    wide = compare(("a", [2.9, 3.0, 3.1]), [("b", [2.901, 3.001, 3.101])], tie_threshold=0.01)[0]
    assert wide.verdict == ADD_SEEDS and wide.seeds_per_arm > 100
    # a gap right at the threshold: the count to detect it, finite (0.01 - 0.01 is not an effect size)
    edge = compare(("a", [6.82, 6.84]), [("b", [6.83, 6.85])], tie_threshold=0.01)[0]
    assert edge.verdict == ADD_SEEDS and edge.seeds_per_arm == 32  # 2 (2.8 x 0.01414 / 0.01)^2 = 31.4, rounded up


def test_holm_correction_over_several_comparisons():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    # p 0.048 alone is resolved; next to a second comparison (p 0.57) its Holm p is 2 x 0.048 = 0.096
    winner, close, far = [1.0, 2.0, 3.0], [3.3, 4.3, 5.3], [1.5, 2.5, 3.5]
    (alone,) = compare(("a", winner), [("b", close)], tie_threshold=0.01)
    assert alone.verdict == RESOLVED and alone.p == pytest.approx(0.0480, abs=1e-4)
    both = compare(("a", winner), [("b", close), ("c", far)], tie_threshold=0.01)
    assert both[0].p_holm == pytest.approx(2 * 0.04798, abs=1e-4) and both[1].p_holm == pytest.approx(0.5734, abs=1e-4)
    assert [c.verdict for c in both] == [ADD_SEEDS, ADD_SEEDS]
    assert "Holm p 0.096" in both[0].why()


def test_one_replicate_is_too_few():
    (c,) = compare(("a", [3.0]), [("b", [3.1, 3.2])], tie_threshold=0.01)
    assert c.verdict == TOO_FEW and "fewer than 2" in c.why()
