"""The fund's side: register models, open encrypted rounds, take submissions, score and pay.

- :mod:`~fhe_toolkit.fund.facade`: :class:`Fund`, the one object a fund's code works with
- :mod:`~fhe_toolkit.fund.rounds`: open and publish rounds
- :mod:`~fhe_toolkit.fund.intake`: the one receive path (round submissions, training results)
- :mod:`~fhe_toolkit.fund.resolution`: score, pay, results files, the fund's benchmark
- :mod:`~fhe_toolkit.fund.training`: encrypted training jobs
- :mod:`~fhe_toolkit.fund.leaderboard`, :mod:`~fhe_toolkit.fund.report`
"""

from fhe_toolkit.fund.facade import Fund
from fhe_toolkit.fund.resolution import RoundResults, fund_benchmark
from fhe_toolkit.fund.training import FundTraining

__all__ = ["Fund", "FundTraining", "RoundResults", "fund_benchmark"]
