// Test peer for TLS capture: a crypto/tls HTTP/1.1 server and client (HTTP/2 disabled so the plaintext
// is HTTP/1.1 on both sides). Bodies are deterministic: body(n)[i] = byte((i*7 + n) % 251).
package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*7 + n) % 251)
	}
	return b
}

func server(cert, key string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(body(n))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: mux, TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}}
	panic(srv.ServeTLS(ln, cert, key))
}

func client(url string, count int, pause time.Duration) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
	c := &http.Client{Transport: tr}
	for i := 0; i < count; i++ {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sum := sha256.Sum256(data)
		fmt.Println(resp.StatusCode, len(data), hex.EncodeToString(sum[:]))
		time.Sleep(pause)
	}
}

func main() {
	switch os.Args[1] {
	case "server":
		server(os.Args[2], os.Args[3])
	case "client":
		count, _ := strconv.Atoi(os.Args[3])
		ms, _ := strconv.Atoi(os.Args[4])
		client(os.Args[2], count, time.Duration(ms)*time.Millisecond)
	}
}
