"""What crosses between the fund and a participant: names, manifests, specs, artifacts and
signatures. Plain data and checks only: nothing here imports Concrete or SQL, or either role."""
