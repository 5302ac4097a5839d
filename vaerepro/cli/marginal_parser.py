"""The parsers of the marginal likelihood commands: loglik (every finished model's log p(x))
and fig3 (the paper's Fig. 3 from run folders)."""

from __future__ import annotations

from vaerepro.core.numbers import parse_count


def add_marginal_parsers(sub) -> None:
    add_loglik_parser(sub)
    p = sub.add_parser(
        "fig3",
        help="Fig. 3 (the marginal likelihood of AEVB, wake-sleep and MCEM) from run folders",
        description="Draw Fig. 3 (fig3.png/.pdf into --out) from the marginal likelihood every "
        "RUN_DIR logged (`--preset fig3`, or any run with --marginal-every): one panel per "
        "N_train, ours coloured by method (mean, min-to-max band over seeds), the paper's "
        "curves grey (a marker per method). Writes the distance to the paper at every logged point "
        "(comparison-marginal.csv and .md into --out) and prints its summary: per N_train, "
        "method and split, our last mean ± sd, the paper there, and how often the paper lies in "
        "the 95% prediction interval for one more seed. Each (N_train, method, N_z, seed) may "
        "come from one folder only.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder for fig3.png/.pdf and the comparison")


def add_loglik_parser(sub) -> None:
    p = sub.add_parser(
        "loglik",
        help="importance-sampled log p(x) of every finished model, with the gap to its ELBO",
        description="Estimate the marginal likelihood log p(x) of every finished model of "
        "RUN_DIR (its final weights must be there) on a split: log of the mean of p(x|z) p(z) "
        "/ q(z|x) over K draws from the encoder's q(z|x), in float64 (Burda et al.'s k = 5000 "
        "test log-likelihood). Prints per model log p(x), its standard error, the ELBO on the "
        "same images and the gap log p(x) - ELBO (nats per datapoint); writes the table to "
        "RUN_DIR/loglik-SPLIT-nN-kK.csv. At k = 5000 it takes minutes per 1000 images on a CPU "
        "core (docs/marginal.md measures it). With --estimator hmc, the paper's HMC "
        "estimator (Appendix D) instead, into loglik-SPLIT-nN-hmc.csv: it finds posterior modes "
        "that the encoder misses. A Monte Carlo EM model has no encoder: its log p(x) is always "
        "the HMC estimator's, and it has no ELBO.",
    )
    p.add_argument("run_dir")
    p.add_argument("--k", type=parse_count, default=5000, help="draws per image (default 5000)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument(
        "--n", type=parse_count, help="the split's first N images only (default: all of it)"
    )
    p.add_argument(
        "--noise-seed",
        type=int,
        default=0,
        help="seed of the estimator's draws and the ELBO's noise (default 0); not a training "
        "seed: every finished model of RUN_DIR is estimated",
    )
    p.add_argument(
        "--estimator",
        choices=("is", "hmc"),
        default="is",
        help="is: importance sampling from q(z|x), k draws (default); hmc: the paper's Fig. 3 "
        "estimator, 50 HMC samples per image (k does not apply)",
    )
    p.add_argument("--data-root", help="MNIST root (default: the run's, from its run.json)")
