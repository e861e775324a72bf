"""The doctor's hazard corpus: worker hazards as they occur in real projects, and clean datasets.

Every dataset class lives at module level (so pickle and spawn workers can import it); the
hazard itself (a lambda, an open file, an RNG object...) is created inside the case's factory
in ``cases.py``. ``CASES`` lists each case with the category and path the doctor must report
and the real-world report it comes from.
"""
