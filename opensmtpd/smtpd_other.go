//go:build !linux

package opensmtpd

import "errors"

// peerCredPID is not implemented off Linux: set the header layout
// explicitly there.
func peerCredPID(fd int) (int, error) {
	return 0, errors.New("peer credentials are read only on Linux")
}
