package queue

import (
	"fmt"

	"github.com/mxqueue/mxq/queue/layout"
)

// ValidNodeName reports whether name can name a node: 1 to 64 characters
// of [a-z0-9._-], not starting with a dot. The error wraps ErrInvalid.
func ValidNodeName(name string) error {
	if err := layout.ValidNode(name); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

// parseEnvelopeKey returns the envelope ID of an envelope key, one that
// layout.Key computes for layout.Envelope. Any other key is ErrCorrupt: it
// was listed where only envelopes are stored.
func parseEnvelopeKey(key string) (EvpID, error) {
	h, err := layout.Parse(key)
	if err != nil || h.Kind != layout.Envelope {
		return 0, fmt.Errorf("%w: unexpected key %q under evp/", ErrCorrupt, key)
	}
	return EvpID(h.Evp), nil
}

// handle is a layout.Handle with its IDs typed.
type handle struct {
	Kind layout.Kind
	Msg  MsgID
	Evp  EvpID
	Node string
	Due  int64
}

// parseHandle is layout.Parse with the IDs typed.
func parseHandle(key string) (handle, error) {
	h, err := layout.Parse(key)
	return handle{Kind: h.Kind, Msg: MsgID(h.Msg), Evp: EvpID(h.Evp), Node: h.Node, Due: h.Due}, err
}

// isEnvelopeKey reports whether key names an envelope.
func isEnvelopeKey(key string) bool {
	_, err := parseEnvelopeKey(key)
	return err == nil
}
