package rest

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the handler's Prometheus collectors:
//
//	mxq_rest_requests_total{op,code}           requests by operation and outcome ("ok" or an error code)
//	mxq_rest_errors_total{op,code}             failed requests by operation and error code
//	mxq_rest_request_duration_seconds{op}      latency histogram by operation
//	mxq_rest_in_flight_requests                requests being served
//	mxq_rest_open_transactions                 queue-layer transactions open
type metrics struct {
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	inflight prometheus.Gauge
	openTx   prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry, h *Handler) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mxq", Subsystem: "rest", Name: "requests_total",
			Help: "Requests by operation and outcome: ok or an error code.",
		}, []string{"op", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mxq", Subsystem: "rest", Name: "errors_total",
			Help: "Failed requests by operation and error code.",
		}, []string{"op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mxq", Subsystem: "rest", Name: "request_duration_seconds",
			Help:    "Time to serve a request, by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"op"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mxq", Subsystem: "rest", Name: "in_flight_requests",
			Help: "Requests being served.",
		}),
		openTx: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mxq", Subsystem: "rest", Name: "open_transactions",
			Help: "Transactions begun through the queue layer and not yet committed or rolled back.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.errors, m.latency, m.inflight, m.openTx)
	}
	return m
}

func (m *metrics) observe(op, code string, d time.Duration) {
	m.requests.WithLabelValues(op, code).Inc()
	if code != "ok" {
		m.errors.WithLabelValues(op, code).Inc()
	}
	m.latency.WithLabelValues(op).Observe(d.Seconds())
}
