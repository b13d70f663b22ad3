# weir_add_plugin(NAME SOURCES... [OUTPUT_DIR dir])
# Builds a weir plugin: a shared library weir_<NAME>.so with hidden symbols (only the descriptor
# alias is exported), linked against the weir SDK, placed where weir finds its plugins.
function(weir_add_plugin name)
  cmake_parse_arguments(ARG "" "OUTPUT_DIR" "SOURCES" ${ARGN})
  set(target weir_plugin_${name})
  add_library(${target} MODULE ${ARG_SOURCES} ${ARG_UNPARSED_ARGUMENTS})
  if(NOT ARG_OUTPUT_DIR)
    set(ARG_OUTPUT_DIR ${WEIR_PLUGIN_OUTPUT_DIR})
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME weir_${name}
    LIBRARY_OUTPUT_DIRECTORY ${ARG_OUTPUT_DIR}
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  target_link_libraries(${target} PRIVATE weir::core)
  target_compile_options(${target} PRIVATE ${WEIR_WARNINGS})
endfunction()
