module github.com/mxqueue/mxq

go 1.26.8
