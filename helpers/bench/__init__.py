"""fio on each layer: profiles, parsing, results files and plots.

Rule: measures and writes results files; changes no machine outside the fio target it is given.
"""
