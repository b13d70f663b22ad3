// A shared library that is not a weir plugin.
extern "C" __attribute__((visibility("default"))) int weir_test_not_a_plugin() { return 1; }
