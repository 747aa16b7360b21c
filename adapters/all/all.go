// Package all registers every adapter with queue.DefaultURLMux. Only
// binaries should import it; libraries take a *queue.Store or a
// *queue.URLMux.
package all

import (
	_ "github.com/mxqueue/mxq/adapters/datastore"  // datastore://
	_ "github.com/mxqueue/mxq/adapters/file"       // file://
	_ "github.com/mxqueue/mxq/adapters/gcs"        // gs://
	_ "github.com/mxqueue/mxq/adapters/mem"        // mem://
	_ "github.com/mxqueue/mxq/adapters/minio"      // minio://
	_ "github.com/mxqueue/mxq/adapters/restclient" // http://, https://
	_ "github.com/mxqueue/mxq/adapters/s3"         // s3://
)
