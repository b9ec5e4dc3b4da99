"""Stage 4 (workflow/rules/results.smk): merged tables, evaluation, baseline, submissions, pictures and the HTML report."""
