"""fio on each layer: profiles, parsing, results files and plots."""
