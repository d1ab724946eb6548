package telemetry

import (
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// optionCache keeps one pre-built attribute set per combination of bounded
// values, so that recording a measurement on the request path neither sorts
// nor hashes nor allocates. The values reaching it have been through a
// closedSet or a cappedSet, so it stays as small as the series it stands for.
type optionCache[K comparable] struct {
	m     sync.Map // K → metric.MeasurementOption
	build func(K) []attribute.KeyValue
}

func (c *optionCache[K]) get(k K) metric.MeasurementOption {
	if o, ok := c.m.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o, _ := c.m.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(c.build(k)...)))
	return o.(metric.MeasurementOption)
}
