{
  "targets": [
    {
      "target_name": "ublk_ts",
      "sources": [
        "<!@(ls native/*.cc targets/*/*.cc)"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-fexceptions", "<!@(pkg-config --cflags liburing)"],
      "libraries": ["<!@(pkg-config --libs liburing)", "-lpthread"],
      "conditions": [
        ["'<!(echo $UBLK_TS_ASAN)'=='1'", {
          "cflags_cc": ["-fsanitize=address", "-fno-omit-frame-pointer"],
          "ldflags": ["-fsanitize=address"]
        }]
      ]
    }
  ]
}
