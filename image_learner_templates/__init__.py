"""The report's Jinja template, a package so that one lookup (jinja2.PackageLoader) finds it both in a
checkout (Galaxy runs the tool from its directory) and in an installed wheel."""
