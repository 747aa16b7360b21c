package opensmtpd

import "syscall"

// peerCredPID returns the pid in the SO_PEERCRED record of socket fd: for a
// socketpair, the process that created it.
func peerCredPID(fd int) (int, error) {
	cred, err := syscall.GetsockoptUcred(fd, syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	if err != nil {
		return 0, err
	}
	return int(cred.Pid), nil
}
