// Test peer for first-bytes capture: a crypto/tls HTTP/2 client that makes its one request as soon as it
// starts (no warm-up), so only probes attached before its first write can see it.
// Usage: goh2 URL RUN-ID. Prints "STATUS BYTES T_REQ_NS" where T_REQ_NS is CLOCK_MONOTONIC when the
// request was sent (comparable with the parent's time.monotonic_ns()).
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"syscall"
	"unsafe"
)

func monoNS() int64 {
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Sec*1e9 + ts.Nsec
}

func main() {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true,
	}
	req, _ := http.NewRequest("GET", os.Args[1], nil)
	req.Header.Set("X-Qtap-Run", os.Args[2])
	t := monoNS()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, len(data), t, resp.Proto)
}
