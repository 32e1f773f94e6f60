"""Parses an OpenMetrics text exposition from stdin with prometheus_client's parser (the
Prometheus project's own; strict: a malformed line, a missing `# EOF`, a counter without
`_total` all fail) and prints its samples as JSON: [[name, {labels}, value, family type]]."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value, family.type])
print(json.dumps(out))
